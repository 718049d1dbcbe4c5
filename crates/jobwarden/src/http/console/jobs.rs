//! The Jobs page (`/`: the live table, filtered, a page at a time), one row of it
//! (`/jobs/{id}/row`), a job's page (`/jobs/{id}`: the ladder as a timeline, audit rows,
//! hooks, recovery, retention, artifacts) and its cancel button (`POST /jobs/{id}/cancel`).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde::Deserialize;

use crate::api_types::JobView;
use crate::clock;
use crate::duration::format_duration;
use crate::engine::ladder;
use crate::engine::plan::CANCEL_REQUESTED;
use crate::engine::retention::{self, ArtifactClass};
use crate::model::{
    AuditAction, AuditEntry, JobId, JobRecord, RuntimeKind, Stage, Step, StepTaken, Timestamp,
    fmt_ts, since,
};
use crate::policy::Resolution;
use crate::store::{AuditQuery, JobFilter, TaskFilter};

use super::super::{Backend, read::view};
use super::{
    Authorized, Live, Nav, PageJobId, PageQuery, error_page, html_response, page, query, see_other,
    token_field, when,
};

/// Rows per page unless `size` says otherwise.
pub const PAGE_SIZE: usize = 100;
/// The most rows a page may have.
pub const MAX_PAGE_SIZE: usize = 1000;

/// The query of `/` and `/jobs/{id}/row`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    org: Option<String>,
    #[serde(rename = "type")]
    job_type: Option<String>,
    stage: Option<String>,
    page: Option<String>,
    size: Option<String>,
    fragment: Option<String>,
}

/// Which jobs the table shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    org: Option<String>,
    job_type: Option<String>,
    stage: Option<Stage>,
}

impl Filter {
    fn matches(&self, job: &JobRecord) -> bool {
        self.org
            .as_ref()
            .is_none_or(|o| job.org.as_ref() == Some(o))
            && self
                .job_type
                .as_ref()
                .is_none_or(|t| job.job_type.as_ref() == Some(t))
            && self.stage.is_none_or(|s| job.stage == s)
    }

    fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("org", self.org.clone().unwrap_or_default()),
            ("type", self.job_type.clone().unwrap_or_default()),
            (
                "stage",
                self.stage
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            ),
        ]
    }
}

/// A parameter that is wrong: which, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter `{name}`: {problem}")]
pub struct ParamError {
    /// The parameter.
    pub name: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

pub(super) fn bad(name: &'static str, problem: impl ToString) -> ParamError {
    ParamError {
        name,
        problem: problem.to_string(),
    }
}

/// An optional name parameter (empty means none), checked against the naming rule.
pub fn name_param(
    name: &'static str,
    what: &'static str,
    v: Option<&str>,
) -> Result<Option<String>, ParamError> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => crate::model::check_name(what, v)
            .map(|()| Some(v.to_owned()))
            .map_err(|e| bad(name, e.to_string())),
    }
}

/// A positive number parameter within `1..=max` (empty means `default`).
pub fn number_param(
    name: &'static str,
    v: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ParamError> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(bad(
                name,
                format!("{v:?} is not a whole number from 1 to {max}"),
            )),
        },
    }
}

fn filter_of(p: &ListParams) -> Result<Filter, ParamError> {
    Ok(Filter {
        org: name_param("org", "organisation", p.org.as_deref())?,
        job_type: name_param("type", "job type", p.job_type.as_deref())?,
        stage: match p.stage.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<Stage>().map_err(|e| bad("stage", e))?),
        },
    })
}

fn fragment_of(
    v: Option<&str>,
    allowed: &[&'static str],
) -> Result<Option<&'static str>, ParamError> {
    match v.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => allowed
            .iter()
            .find(|a| **a == v)
            .copied()
            .map(Some)
            .ok_or_else(|| {
                bad(
                    "fragment",
                    format!("{v:?} is not one of: {}", allowed.join(", ")),
                )
            }),
    }
}

/// The order of the active jobs: with a next step, soonest first; then the others, newest
/// first. (Finished jobs follow them, newest first: the store orders those.)
fn order_key(v: &JobView) -> (u8, i64) {
    match &v.next_step {
        Some(n) => (0, n.due_at.timestamp_millis()),
        None => (1, -v.created_at.timestamp_millis()),
    }
}

/// `GET /`: the jobs table.
pub async fn list<B: Backend>(
    State(st): State<B>,
    PageQuery(p): PageQuery<ListParams>,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let parsed = (|| {
        Ok::<_, ParamError>((
            filter_of(&p)?,
            number_param("page", p.page.as_deref(), 1, usize::MAX)?,
            number_param("size", p.size.as_deref(), PAGE_SIZE, MAX_PAGE_SIZE)?,
            fragment_of(p.fragment.as_deref(), &["rows"])?,
        ))
    })();
    let (filter, page_no, size, fragment) = match parsed {
        Ok(v) => v,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, rt, now, &e.to_string()),
    };
    // Active jobs are all read (their next steps order the table); finished ones only a page
    // at a time, newest first, so a long history costs a count, not a decode of every job.
    let base = JobFilter {
        org: filter.org.clone(),
        job_type: filter.job_type.clone(),
        stage: filter.stage,
        ..JobFilter::default()
    };
    let read = async {
        let active = st
            .store()
            .list_jobs(&JobFilter {
                active_only: true,
                ..base.clone()
            })
            .await?;
        let finished_filter = JobFilter {
            finished_only: true,
            ..base.clone()
        };
        let finished_total = st.store().count_jobs(&finished_filter).await?;
        Ok::<_, crate::store::Error>((active, finished_filter, finished_total))
    };
    let (active, finished_filter, finished_total) = match read.await {
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
    let mut active_rows: Vec<(JobView, &JobRecord)> =
        active.iter().map(|j| (view(st.policy(), j), j)).collect();
    active_rows.sort_by_key(|(v, _)| order_key(v));
    let active_count = active_rows.len();
    let total = active_count + usize::try_from(finished_total).unwrap_or(usize::MAX);
    let pages = total.div_ceil(size).max(1);
    let page_no = page_no.min(pages);
    let start = (page_no - 1).saturating_mul(size);
    let from_active = &active_rows[start.min(active_count)..(start + size).min(active_count)];
    let wanted = size - from_active.len();
    let finished = if wanted == 0 {
        Vec::new()
    } else {
        let page = st
            .store()
            .list_jobs(&JobFilter {
                newest_first: true,
                offset: Some(u32::try_from(start.saturating_sub(active_count)).unwrap_or(u32::MAX)),
                limit: Some(u32::try_from(wanted).unwrap_or(u32::MAX)),
                ..finished_filter
            })
            .await;
        match page {
            Ok(p) => p,
            Err(e) => {
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    rt,
                    now,
                    &format!("store: {e}"),
                );
            }
        }
    };
    let finished_rows: Vec<(JobView, &JobRecord)> =
        finished.iter().map(|j| (view(st.policy(), j), j)).collect();
    let shown = from_active.iter().chain(finished_rows.iter());
    let body_rows = html! {
        @for (v, j) in shown { (job_row(v, j, now)) }
    };
    if fragment == Some("rows") {
        return html_response(StatusCode::OK, body_rows);
    }
    let mut orgs: Vec<String> = st
        .policy_config()
        .organization_max
        .keys()
        .cloned()
        .collect();
    let mut types: Vec<String> = st
        .policy_config()
        .job_type_overrides
        .keys()
        .chain(st.policy_config().job_type_grace.keys())
        .cloned()
        .collect();
    for j in active.iter().chain(&finished) {
        orgs.extend(j.org.clone());
        types.extend(j.job_type.clone());
    }
    orgs.sort();
    orgs.dedup();
    types.sort();
    types.dedup();
    let pairs = filter.pairs();
    let link = |n: usize| {
        let mut all: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let n = n.to_string();
        let size_s = size.to_string();
        all.push(("page", &n));
        if size != PAGE_SIZE {
            all.push(("size", &size_s));
        }
        format!("/{}", query(&all))
    };
    let body = html! {
        h1 { "Jobs" }
        form.filters method="get" action="/" {
            label { "Organisation"
                input name="org" list="orgs" value=[filter.org.as_deref()] autocomplete="off";
            }
            datalist #orgs { @for o in &orgs { option value=(o) {} } }
            label { "Job type"
                input name="type" list="types" value=[filter.job_type.as_deref()] autocomplete="off";
            }
            datalist #types { @for t in &types { option value=(t) {} } }
            label { "Stage"
                select name="stage" {
                    option value="" { "any" }
                    @for s in Stage::ALL {
                        option value=(s.as_str()) selected[filter.stage == Some(*s)] { (s.as_str()) }
                    }
                }
            }
            button type="submit" { "Filter" }
            @if filter != Filter::default() { a href="/" { "Clear" } }
        }
        p.note { (total) " jobs (" (active_count) " active), page " (page_no) " of " (pages) ": active jobs first, the soonest next step first, then finished ones, the newest first." }
        table #jobs {
            caption.skip { "Jobs, the soonest next step first" }
            thead { tr {
                th scope="col" { "Name and id" }
                th scope="col" { "Org" }
                th scope="col" { "Type" }
                th scope="col" { "Stage" }
                th scope="col" class="num" { "Elapsed" }
                th scope="col" { "Timeout (from)" }
                th scope="col" { "Time left" }
                th scope="col" { "Next step" }
            } }
            tbody { (body_rows) }
        }
        nav.pager aria-label="Pages" {
            @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "← Previous" } }
            span { "Page " (page_no) " of " (pages) }
            @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "Next →" } }
        }
    };
    html_response(
        StatusCode::OK,
        page(
            "Jobs",
            Nav::Jobs,
            rt,
            now,
            &Live {
                mode: Some("rows"),
                ..Live::default()
            },
            body,
        ),
    )
}

/// Where the time-left bar of a job's next step starts: the run's start for a warning or the
/// soft kill, the previous kill step for the later ones.
fn bar_from(job: &JobRecord, step: Step) -> Option<Timestamp> {
    let taken = |s: Step| job.steps.iter().find(|t| t.step == s).map(|t| t.at);
    match step {
        Step::Warn | Step::SoftKill => job.started_at,
        Step::HardKill => taken(Step::SoftKill),
        Step::ForceDelete => taken(Step::HardKill),
    }
}

/// Where the effective timeout came from, in words (`unknown` for a record from before this
/// was kept).
pub fn timeout_from(job: &JobRecord) -> String {
    Resolution::from_spec(&job.spec).map_or_else(|| "unknown".to_owned(), |r| r.words())
}

/// One row of the jobs table.
pub fn job_row(v: &JobView, job: &JobRecord, now: Timestamp) -> Markup {
    let elapsed = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => Some((format_duration(since(f, s)), None)),
        (Some(s), None) => Some((format_duration(since(now, s)), Some(s.timestamp_millis()))),
        _ => None,
    };
    let next = v.next_step.as_ref();
    html! {
        tr id=(format!("job-{}", job.id)) {
            td {
                a href=(format!("/jobs/{}", job.id)) { (job.name) }
                br;
                span.id { (job.id) }
            }
            td { (job.org.as_deref().unwrap_or("—")) }
            td { (job.job_type.as_deref().unwrap_or("—")) }
            td {
                span class=(format!("stage stage-{}", job.stage)) { (job.stage) }
                @if let Some(o) = job.outcome { " " span.muted { (o) } }
            }
            td.num {
                @match elapsed {
                    Some((text, Some(since_ms))) => span data-since=(since_ms) { (text) },
                    Some((text, None)) => (text),
                    None => "—",
                }
            }
            td {
                (format_duration(job.timeout)) br;
                span.muted { (timeout_from(job)) }
            }
            td.timeleft {
                @if let Some(n) = next {
                    @let from = bar_from(job, n.step).unwrap_or(job.created_at);
                    @let span_ms = (n.due_at - from).num_milliseconds().max(1) as f64;
                    @let left_ms = (n.due_at - now).num_milliseconds() as f64;
                    @let value = (left_ms / span_ms).clamp(0.0, 1.0);
                    meter min="0" max="1" value=(format!("{value:.3}"))
                        data-from=(from.timestamp_millis()) data-due=(n.due_at.timestamp_millis())
                        aria-label=(format!("time left until {}", n.step)) {}
                    " "
                    span.left data-due=(n.due_at.timestamp_millis()) data-step=(n.step.as_str())
                        class=[(n.due_at < now).then_some("overdue")] {
                        (n.step) " " (super::relative(n.due_at, now))
                    }
                } @else {
                    span.muted { "—" }
                }
            }
            td {
                @match (next, v.cleanup_at) {
                    (Some(n), _) => { (n.step) " " (when(n.due_at, now)) },
                    (None, Some(at)) => { "cleanup " (when(at, now)) },
                    (None, None) => span.muted { "none" },
                }
            }
        }
    }
}

/// `GET /jobs/{id}/row?org=&type=&stage=`: the job's row of the jobs table, or 204 when the
/// filters leave it out (the script then removes it).
pub async fn row<B: Backend>(
    State(st): State<B>,
    PageJobId(id): PageJobId,
    PageQuery(p): PageQuery<ListParams>,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let filter = match filter_of(&p) {
        Ok(f) => f,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, rt, now, &e.to_string()),
    };
    match st.store().get_job(&id).await {
        Ok(Some(job)) if filter.matches(&job) => {
            html_response(StatusCode::OK, job_row(&view(st.policy(), &job), &job, now))
        }
        Ok(Some(_)) => StatusCode::NO_CONTENT.into_response(),
        Ok(None) => error_page(
            StatusCode::NOT_FOUND,
            rt,
            now,
            &format!("no job with id {id}"),
        ),
        Err(e) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            rt,
            now,
            &format!("store: {e}"),
        ),
    }
}

/// The query of `/jobs/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowParams {
    fragment: Option<String>,
    done: Option<String>,
}

/// One step of the timeline: when it was (or is) due and when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineStep {
    /// Which step.
    pub step: Step,
    /// When it was or is due.
    pub due_at: Timestamp,
    /// When it was taken (None: not yet).
    pub at: Option<Timestamp>,
}

/// The ladder of the job's run: the steps taken (due and actual), then, while it runs, the
/// steps still to come with their due times as the ladder would take them on time.
pub fn timeline(job: &JobRecord, warn_before: &[Duration]) -> Vec<TimelineStep> {
    let mut out: Vec<TimelineStep> = job
        .steps
        .iter()
        .map(|s| TimelineStep {
            step: s.step,
            due_at: s.due_at,
            at: Some(s.at),
        })
        .collect();
    let mut sim = job.clone();
    for _ in 0..8 {
        let Some(n) = ladder::next_step(&sim, warn_before) else {
            break;
        };
        out.push(TimelineStep {
            step: n.step,
            due_at: n.due_at,
            at: None,
        });
        sim.steps.push(StepTaken {
            step: n.step,
            due_at: n.due_at,
            at: n.due_at,
        });
    }
    out
}

/// `GET /jobs/{id}`: one job.
pub async fn show<B: Backend>(
    State(st): State<B>,
    PageJobId(id): PageJobId,
    PageQuery(p): PageQuery<ShowParams>,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    let fragment = match fragment_of(p.fragment.as_deref(), &["main"]) {
        Ok(f) => f,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, rt, now, &e.to_string()),
    };
    let store = st.store();
    let job = match store.get_job(&id).await {
        Ok(Some(j)) => j,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                rt,
                now,
                &format!("no job with id {id}"),
            );
        }
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                rt,
                now,
                &format!("store: {e}"),
            );
        }
    };
    let audit = store
        .query_audit(&AuditQuery {
            job_id: Some(id.to_string()),
            limit: Some(500),
            newest_first: true,
            ..AuditQuery::default()
        })
        .await;
    let tasks = store
        .list_tasks(&TaskFilter {
            job_id: Some(id.to_string()),
            ..TaskFilter::default()
        })
        .await;
    let (audit, tasks) = match (audit, tasks) {
        (Ok(a), Ok(t)) => (a, t),
        (Err(e), _) | (_, Err(e)) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                rt,
                now,
                &format!("store: {e}"),
            );
        }
    };
    let flash = match (p.done.as_deref(), rt) {
        (Some("cancelled"), RuntimeKind::Local) => {
            Some("Cancelled: SIGTERM now, then the normal ladder.")
        }
        (Some("cancelled"), RuntimeKind::Kubernetes) => {
            Some("Cancelled: the leader took the soft kill; the normal ladder follows.")
        }
        (Some("requested"), _) => Some(
            "Cancel requested: the Job is annotated, and the leader has not recorded the soft kill yet. This page shows it when it does.",
        ),
        _ => None,
    };
    let main = job_main(&st, &job, &audit, &tasks, flash, now);
    if fragment == Some("main") {
        return html_response(StatusCode::OK, main);
    }
    html_response(
        StatusCode::OK,
        page(
            &job.name,
            Nav::None,
            rt,
            now,
            &Live {
                mode: Some("main"),
                job: Some(job.id.to_string()),
                kinds: None,
            },
            main,
        ),
    )
}

fn job_main<B: Backend>(
    st: &B,
    job: &JobRecord,
    audit: &[AuditEntry],
    tasks: &[crate::store::Task],
    flash: Option<&str>,
    now: Timestamp,
) -> Markup {
    let policy = st.policy();
    let v = view(policy, job);
    let steps = timeline(job, &policy.warn_before);
    let hooks: Vec<&AuditEntry> = audit
        .iter()
        .filter(|r| r.action == AuditAction::Hook)
        .collect();
    let recoveries: Vec<&AuditEntry> = audit
        .iter()
        .filter(|r| matches!(r.action, AuditAction::Recover | AuditAction::MarkFailed))
        .collect();
    let opt = |t: Option<Timestamp>| -> Markup {
        match t {
            Some(t) => when(t, now),
            None => html! { "—" },
        }
    };
    let rt = st.runtime();
    let can_cancel = job.stage.is_active();
    // A Kubernetes cancel the leader has not answered yet (the annotation, as last seen).
    let requested = job
        .spec
        .get(CANCEL_REQUESTED)
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Timestamp>().ok())
        .filter(|_| can_cancel && !job.has_step(Step::SoftKill));
    html! {
        @if let Some(f) = flash { p.flash role="status" { (f) } }
        h1 { (job.name) " " span class=(format!("stage stage-{}", job.stage)) { (job.stage) } }
        p.id { (job.id) }
        @if can_cancel {
            form.action method="post" action=(format!("/jobs/{}/cancel", job.id)) {
                (token_field(st, "cancel-token"))
                button.danger type="submit" { "Cancel this job" }
            }
            @if rt == RuntimeKind::Local {
                p.note { "Cancel sends SIGTERM now; the grace period and the rest of the ladder follow." }
            } @else {
                p.note { "Cancel annotates the Job " code { "cancel-requested" } "; the leader takes the soft kill, and the grace period and the rest of the ladder follow." }
            }
        }
        @if let Some(at) = requested {
            p.note #cancel-requested { "Cancel requested " (when(at, now)) "; the leader has not taken the soft kill yet." }
        }
        h2 { "Facts" }
        dl.facts {
            dt { "Organisation" } dd { (job.org.as_deref().unwrap_or("—")) }
            dt { "Job type" } dd { (job.job_type.as_deref().unwrap_or("—")) }
            dt { "Runtime" } dd { (job.runtime.as_str()) @if let Some(ns) = &job.namespace { " (namespace " (ns) ")" } }
            dt { "Outcome" } dd { (job.outcome.map(|o| o.as_str()).unwrap_or("—")) }
            dt { "Reason" } dd { (job.reason.as_deref().unwrap_or("—")) }
            dt { "Effective timeout" } dd { (format_duration(job.timeout)) ": " (timeout_from(job)) }
            dt { "Grace" } dd { (format_duration(job.grace)) }
            dt { "Created" } dd { (when(job.created_at, now)) }
            dt { "Started" } dd { (opt(job.started_at)) }
            dt { "Deadline" } dd { (opt(job.deadline)) }
            dt { "Finished" } dd { (opt(job.finished_at)) }
            dt { "Next step" } dd {
                @match (&v.next_step, v.cleanup_at) {
                    (Some(n), _) => { (n.step) " " (when(n.due_at, now)) },
                    (None, Some(at)) => { "cleanup " (when(at, now)) },
                    (None, None) => "none",
                }
            }
            dt { "Run" } dd { span.id { (job.run_id) } " (attempt " (job.attempt) ")" }
            @if let Some(pid) = job.pid { dt { "Process group" } dd { (pid) } }
            dt { "Heartbeat" } dd {
                @match job.heartbeat_timeout {
                    Some(t) => { "every " (format_duration(t)) " at most; last " (opt(job.last_heartbeat)) },
                    None => "not checked",
                }
            }
        }
        h2 { "Timeline" }
        (super::chart::timeline(&steps, job.started_at.unwrap_or(job.created_at), now))
        table.timeline {
            caption { "The ladder of this run: when each step was due and when it was taken" }
            thead { tr {
                th scope="col" { "Step" } th scope="col" { "Due" } th scope="col" { "Taken" } th scope="col" class="num" { "Late by" }
            } }
            tbody {
                @for s in &steps {
                    tr data-step=(s.step.as_str()) {
                        td { (s.step) }
                        td { (when(s.due_at, now)) }
                        td { @match s.at {
                            Some(at) => (when(at, now)),
                            None if job.stage.is_active() => span.muted { "not yet" },
                            None => span.muted { "not needed" },
                        } }
                        td.num { @if let Some(at) = s.at {
                            (format!("{} ms", (at - s.due_at).num_milliseconds().max(0)))
                        } }
                    }
                }
                @if steps.is_empty() { tr { td colspan="4" { span.muted { "No step: the run never reached its deadline's ladder." } } } }
            }
        }
        h2 { "Retention" }
        @match job.finished_at.filter(|_| !job.stage.is_active()) {
            None => p { "Retention counts from the finish: the workspace goes after the TTL for the outcome, logs and artifacts after their own retention." },
            Some(finished) => ul.plain #retention {
                li { "Workspace (its TTL, " (format_duration(retention::ttl_for(job, &policy.retention))) "): "
                    @match v.cleanup_at { Some(at) => (when(at, now)), None => "removed, or being removed" } }
                @for (what, class) in [
                    ("Artifacts (jobs/<org>/<id>/)", ArtifactClass::Artifacts),
                    ("Partial saves (partial/<id>/)", ArtifactClass::Partial),
                    ("Logs (the log file, logs/<id>/)", ArtifactClass::Logs),
                ] {
                    @let ttl = retention::artifact_ttl(class, job, &policy.retention);
                    li { (what) ", kept " (format_duration(ttl)) ": until " (when(crate::model::add(finished, ttl), now)) }
                }
            },
        }
        h2 { "Artifacts and cleanup tasks" }
        @if tasks.is_empty() {
            p.muted { "No cleanup task was queued for this job yet." }
        } @else {
            table {
                caption { "Cleanup tasks of this job (workspace, log, object-storage prefixes)" }
                thead { tr {
                    th scope="col" { "Task" } th scope="col" { "Kind" } th scope="col" { "Resource" }
                    th scope="col" { "State" } th scope="col" { "Due" } th scope="col" { "Last error" }
                } }
                tbody { @for t in tasks { tr {
                    td { (t.id) } td { (t.kind) } td { code { (t.resource_name) } }
                    td { (t.state.as_str()) " (" (t.attempts) "/" (t.max_attempts) ")" }
                    td { (when(t.scheduled_at, now)) }
                    td { (t.last_error.as_deref().unwrap_or("")) }
                } } }
            }
        }
        h2 { "Recovery" }
        p { (job.recovery_attempts) " recovery attempts." }
        @if !recoveries.is_empty() { (audit_table(&recoveries, now, false)) }
        h2 { "Hooks" }
        @if hooks.is_empty() { p.muted { "No hook ran for this job." } } @else { (audit_table(&hooks, now, false)) }
        h2 { "Audit" }
        @let all: Vec<&AuditEntry> = audit.iter().collect();
        (audit_table(&all, now, false))
        p.note { a href=(format!("/audit{}", query(&[("job", job.id.as_str())]))) { "Search the audit log for this job" } }
    }
}

/// Audit rows, newest first as given; `link_jobs`: each row links to its job.
pub fn audit_table(rows: &[&AuditEntry], now: Timestamp, link_jobs: bool) -> Markup {
    html! {
        table.audit {
            thead { tr {
                th scope="col" { "Time" }
                @if link_jobs { th scope="col" { "Job" } }
                th scope="col" { "Action" }
                th scope="col" { "Resource" }
                th scope="col" { "OK" }
                th scope="col" { "Reason" }
                th scope="col" { "Details" }
            } }
            tbody {
                @for r in rows {
                    tr {
                        td { (when(r.timestamp, now)) }
                        @if link_jobs { td {
                            @if JobId::is_valid(&r.job_id) {
                                a href=(format!("/jobs/{}", r.job_id)) { span.id { (r.job_id) } }
                            } @else { span.id { (r.job_id) } }
                        } }
                        td { (r.action) @if r.dry_run { " (dry-run)" } }
                        td { (r.resource_type) " " code { (r.resource_name) } }
                        td { @if r.success { "yes" } @else { strong { "no" } } }
                        td { (r.reason) @if let Some(e) = &r.error_message { br; span.muted { "error: " (e) } } }
                        td { @if let Some(d) = &r.details { code { (d.to_string()) } } }
                    }
                }
                @if rows.is_empty() { tr { td colspan="7" { span.muted { "No rows." } } } }
            }
        }
    }
}

/// `POST /jobs/{id}/cancel`: the cancel button (token rule in the module docs).
pub async fn cancel<B: Backend>(
    State(st): State<B>,
    PageJobId(id): PageJobId,
    _: Authorized,
) -> Response {
    let now = clock::now();
    let rt = st.runtime();
    match st.cancel(id.clone()).await {
        // 202: asked of the Kubernetes leader, which has not recorded the soft kill yet.
        Ok((StatusCode::ACCEPTED, _)) => {
            tracing::info!(job = %id, at = %fmt_ts(now), "cancel requested from the console");
            see_other(&format!("/jobs/{id}?done=requested"))
        }
        Ok(_) => {
            tracing::info!(job = %id, at = %fmt_ts(now), "cancelled from the console");
            see_other(&format!("/jobs/{id}?done=cancelled"))
        }
        Err(e) => error_page(e.status, rt, now, &e.message),
    }
}

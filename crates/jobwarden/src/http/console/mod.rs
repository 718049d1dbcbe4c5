//! The web console: server-rendered HTML pages for administrators, served at `/` by both
//! runtimes from the same routes ([`routes`], merged into [`super::api`]), over the same
//! [`Backend`]. Templates are [`maud`] (checked at compile time; every value interpolated into
//! a page is HTML-escaped); the stylesheet and the one small script are embedded in the binary
//! ([`ASSETS`]); no CDN, no build toolchain. Every page reads without JavaScript; the script
//! only makes it live (time-left bars tick; `GET /v1/events` refreshes the rows an event is
//! about).
//!
//! Pages ([`jobs`], [`pages`]): `/` jobs, `/jobs/{id}` a job, `/audit`, `/queue` (the cleanup
//! queue), `/orphans`, `/policy`, `/reclaimed`. Fragments for live updates:
//! `/jobs/{id}/row` (one row of the jobs table, 204 when the filters exclude it),
//! `?fragment=rows` (the jobs table's rows) and `?fragment=main` (a page's main section).
//!
//! # Why maud
//!
//! One small, maintained crate (maud 0.27: `maud`, `maud_macros`, `proc-macro2-diagnostics`;
//! `syn`, `quote` and `proc-macro2` were in the tree already): templates are Rust, checked when
//! the daemon is compiled, and every `(value)` is HTML-escaped unless wrapped in
//! `PreEscaped`, which the console never uses. Its cost, measured on the shared 2-core machine
//! with `cargo build -p jobwarden --lib` after `cargo clean -p jobwarden`: 39.6 s of CPU
//! (40.6 s wall) before the console, 43.6–45.6 s of CPU (36–67 s wall: the machine's other
//! builds) after, the console's own code included; the three maud crates build once in 4.1 s
//! of CPU (3.1 s wall).
//!
//! # The token rule
//!
//! - **Reading is open**: the pages, their fragments, the assets and `GET /v1/events` need no
//!   token, on any listen address (the rule: an administrator opens the console in a
//!   browser, which sends no bearer token). They show what the store holds about jobs, never
//!   the token, the config's secrets or a job's command line. The JSON API under `/v1` keeps
//!   its own rule: with a token configured every route but heartbeats and the event stream
//!   needs it.
//! - **Acting needs the token**: the console's buttons (`POST /jobs/{id}/cancel`,
//!   `POST /queue/{id}/requeue`, `POST /orphans/clean`) are forms whose `token` field must hold
//!   the API token when one is configured (or the request carries `Authorization: Bearer`);
//!   the field is a password field, never filled in by the server, and the token never
//!   appears in a page, a URL or a message. Without a token configured (the daemon then listens
//!   on loopback only) an action is taken only when the request's `Host` is a loopback name or
//!   address, so that a web page cannot drive a local console through DNS rebinding.
//! - **Cross-site requests are refused**: an action whose `Origin` (or `Sec-Fetch-Site`) says
//!   it comes from another site answers 403, token or not. Every page is sent with a Content
//!   Security Policy allowing only its own script, styles and connections, and may not be
//!   framed.

mod chart;
pub mod jobs;
pub mod pages;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::clock;
use crate::duration::relative;
use crate::model::{JobId, RuntimeKind, Timestamp, fmt_ts};

use super::Backend;

/// A page's query parameters; a query that does not parse answers the 400 error page.
pub struct PageQuery<T>(pub T);

impl<B: Backend, T: DeserializeOwned + Send> FromRequestParts<B> for PageQuery<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &B) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, st).await {
            Ok(Query(p)) => Ok(PageQuery(p)),
            Err(r) => Err(error_page(
                StatusCode::BAD_REQUEST,
                st.runtime(),
                clock::now(),
                &r.body_text(),
            )),
        }
    }
}

/// The job id of a `/jobs/{id}…` path: 400 when the path does not read, 404 when it is not a
/// job id (no job can have it).
pub struct PageJobId(pub JobId);

impl<B: Backend> FromRequestParts<B> for PageJobId {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &B) -> Result<Self, Response> {
        let (rt, now) = (st.runtime(), clock::now());
        let Path(raw) = Path::<String>::from_request_parts(parts, st)
            .await
            .map_err(|r| {
                error_page(
                    StatusCode::BAD_REQUEST,
                    rt,
                    now,
                    &format!("the job id in the URL: {}", r.body_text()),
                )
            })?;
        JobId::parse(&raw)
            .map(PageJobId)
            .map_err(|e| error_page(StatusCode::NOT_FOUND, rt, now, &e.to_string()))
    }
}

/// The embedded assets: (path, content type, body).
pub const ASSETS: [(&str, &str, &str); 2] = [
    (
        "/assets/console.css",
        "text/css; charset=utf-8",
        include_str!("assets/console.css"),
    ),
    (
        "/assets/console.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/console.js"),
    ),
];

/// The console's routes (state: the runtime's [`Backend`]).
pub fn routes<B: Backend>() -> Router<B> {
    let mut r = Router::new()
        .route("/", get(jobs::list::<B>))
        .route("/jobs/{id}", get(jobs::show::<B>))
        .route("/jobs/{id}/row", get(jobs::row::<B>))
        .route("/jobs/{id}/cancel", post(jobs::cancel::<B>))
        .route("/audit", get(pages::audit::<B>))
        .route("/queue", get(pages::queue::<B>))
        .route("/queue/{id}/requeue", post(pages::requeue::<B>))
        .route("/orphans", get(pages::orphans::<B>))
        .route("/orphans/clean", post(pages::clean_orphans::<B>))
        .route("/policy", get(pages::policy::<B>))
        .route("/reclaimed", get(pages::reclaimed::<B>));
    for (path, content_type, body) in ASSETS {
        r = r.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    body,
                )
            }),
        );
    }
    r
}

/// The Content-Security-Policy of every page: its own script, styles and connections only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A page (or fragment) with the console's security headers.
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        // Not no-referrer: with it a browser sends `Origin: null` on the page's own forms.
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Which page a navigation link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// `/`.
    Jobs,
    /// `/audit`.
    Audit,
    /// `/queue`.
    Queue,
    /// `/orphans`.
    Orphans,
    /// `/policy`.
    Policy,
    /// `/reclaimed`.
    Reclaimed,
    /// None of them (a job page, an error).
    None,
}

/// How a page updates itself (the `data-live` attribute the script reads).
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// `rows` (the jobs table) or `main` (the main section); None: static.
    pub mode: Option<&'static str>,
    /// Only events about this job.
    pub job: Option<String>,
    /// Only events of these kinds (space-separated), e.g. `task`.
    pub kinds: Option<&'static str>,
}

/// A whole page: the header with the navigation, `body` as the main section.
pub fn page(
    title: &str,
    nav: Nav,
    runtime: RuntimeKind,
    now: Timestamp,
    live: &Live,
    body: Markup,
) -> Markup {
    let links = [
        (Nav::Jobs, "/", "Jobs"),
        (Nav::Audit, "/audit", "Audit"),
        (Nav::Queue, "/queue", "Cleanup queue"),
        (Nav::Orphans, "/orphans", "Orphans"),
        (Nav::Policy, "/policy", "Policy"),
        (Nav::Reclaimed, "/reclaimed", "Reclaimed"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · jobwarden" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body data-now=(now.timestamp_millis()) data-live=[live.mode] data-job=[live.job.as_deref()]
                data-kinds=[live.kinds] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "jobwarden" }
                    nav aria-label="Console" {
                        ul {
                            @for (which, href, label) in links {
                                li {
                                    a href=(href) aria-current=[(which == nav).then_some("page")] { (label) }
                                }
                            }
                        }
                    }
                    span.runtime { "runtime: " (runtime.as_str()) }
                }
                @if live.mode.is_some() {
                    p #live role="status" aria-live="polite" {
                        "Live updates need JavaScript: this page shows what was true when it was loaded."
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// An error page: `status` and what was wrong.
pub fn error_page(
    status: StatusCode,
    runtime: RuntimeKind,
    now: Timestamp,
    message: &str,
) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    html_response(
        status,
        page(
            title,
            Nav::None,
            runtime,
            now,
            &Live::default(),
            html! {
                h1 { (status.as_u16()) " " (title) }
                p.error role="alert" { (message) }
                p { a href="/" { "Back to the jobs" } }
            },
        ),
    )
}

/// A time as the console shows it: `<time>` with the UTC time, relative to `now` in words.
pub fn when(t: Timestamp, now: Timestamp) -> Markup {
    html! {
        time datetime=(fmt_ts(t)) title=(fmt_ts(t)) { (relative(t, now)) }
    }
}

/// A query string from `pairs` (empty values left out), `?`-prefixed, or empty.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    let q = s.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

/// An action the request may take: its form read (`action_form`) and the token rule
/// passed (`authorize`); otherwise the error page that says why.
pub struct Authorized;

impl<B: Backend> FromRequest<B> for Authorized {
    type Rejection = Response;

    async fn from_request(req: Request, st: &B) -> Result<Self, Response> {
        let now = clock::now();
        let headers = req.headers().clone();
        let form = action_form(Bytes::from_request(req, st).await, st.runtime(), now)?;
        authorize(st, &headers, &form, now)?;
        Ok(Authorized)
    }
}

/// The form of an action button: an optional token field.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionForm {
    /// The API token (when one is configured).
    #[serde(default)]
    pub token: Option<String>,
}

/// Reads an action's form body: 400 naming the problem when it is not a form jobwarden sent.
#[allow(
    clippy::result_large_err,
    reason = "the error is the handler's early response, built once per bad request"
)]
fn action_form(
    body: Result<Bytes, BytesRejection>,
    runtime: RuntimeKind,
    now: Timestamp,
) -> Result<ActionForm, Response> {
    let body = body.map_err(|r| {
        error_page(
            r.status(),
            runtime,
            now,
            &format!("request body: {}", r.body_text()),
        )
    })?;
    if body.is_empty() {
        return Ok(ActionForm::default());
    }
    serde_urlencoded::from_bytes::<ActionForm>(&body).map_err(|e| {
        error_page(
            StatusCode::BAD_REQUEST,
            runtime,
            now,
            &format!("the form: {e} (the only field is `token`)"),
        )
    })
}

/// Whether an action may be taken (see the module docs): 403 for a cross-site request or,
/// without a token configured, a request not addressed to a loopback host; 401 when the token
/// is configured and the form (or the bearer header) does not carry it. Never says what the
/// token is.
#[allow(
    clippy::result_large_err,
    reason = "the error is the handler's early response, built once per refused request"
)]
fn authorize<B: Backend>(
    st: &B,
    headers: &HeaderMap,
    form: &ActionForm,
    now: Timestamp,
) -> Result<(), Response> {
    let runtime = st.runtime();
    let refuse = |status: StatusCode, message: &str| error_page(status, runtime, now, message);
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if matches!(site, "cross-site" | "same-site") {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "refused: the request came from another site",
        ));
    }
    // `Origin: null` (a privacy setting) is taken only with the browser's word that the
    // request is the page's own.
    let null_but_own = site == "same-origin"
        && headers
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes() == b"null");
    if let Some(origin) = headers.get(header::ORIGIN).filter(|_| !null_but_own) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| url::Url::parse(o).ok())
            .is_some_and(|o| {
                let authority = match o.port() {
                    Some(p) => format!("{}:{p}", o.host_str().unwrap_or("")),
                    None => o.host_str().unwrap_or("").to_owned(),
                };
                !host.is_empty() && authority.eq_ignore_ascii_case(host)
            });
        if !same {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "refused: the request's Origin is not this console",
            ));
        }
    }
    match st.token() {
        Some(token) => {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let given = form.token.as_deref().filter(|t| !t.is_empty()).or(bearer);
            if given.is_some_and(|g| same_secret(g, token)) {
                Ok(())
            } else {
                Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "this action needs the API token: enter it in the form's token field (reading needs none)",
                ))
            }
        }
        None if is_loopback_host(host) => Ok(()),
        None => Err(refuse(
            StatusCode::FORBIDDEN,
            "refused: without an API token, actions are taken only on requests to a loopback address (127.0.0.1, [::1], localhost)",
        )),
    }
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a `Host` header names this machine's loopback: `localhost`, `127.x.y.z`, `[::1]`,
/// with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The action form's token field, when a token is configured; nothing otherwise.
pub fn token_field(st: &impl super::ReadState, id: &str) -> Markup {
    html! {
        @if st.token().is_some() {
            label for=(id) { "API token" }
            input #(id) type="password" name="token" autocomplete="current-password" required;
        }
    }
}

/// A 303 to `location` (after an action).
pub fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_loopback_and_nothing_else_is() {
        for h in [
            "localhost",
            "localhost:7800",
            "127.0.0.1",
            "127.0.0.1:7800",
            "127.9.9.9:1",
            "[::1]:7800",
            "[::1]",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "evil.example:7800",
            "10.0.0.1:7800",
            "localhost.evil.example",
            "[::2]:1",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn queries_leave_out_empty_values_and_escape_the_rest() {
        assert_eq!(query(&[("org", ""), ("stage", "")]), "");
        assert_eq!(query(&[("org", "a&b"), ("page", "2")]), "?org=a%26b&page=2");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        let page = page(
            "<script>alert(1)</script>",
            Nav::Jobs,
            RuntimeKind::Local,
            now,
            &Live::default(),
            html! { p { ("\"><img src=x onerror=alert(1)>") } },
        )
        .into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(!page.contains("<img src=x"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
    }
}

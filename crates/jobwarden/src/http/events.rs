//! `GET /v1/events`: the live event bus ([`crate::events`]) as Server-Sent Events.
//!
//! Each event is one SSE message: `event: step|stage|task`, `data:` its JSON
//! (`{"type": "step", "job_id": …, "step": "soft_kill", "reason": …, "at": …}`). The stream
//! starts with `retry: 1000` (a client reconnects a second after the server went away, e.g.
//! across a daemon restart) and a `hello` event, and sends a comment every 15 s so that
//! proxies keep it open. A client that fell more than [`crate::events::CAPACITY`] events
//! behind gets a `resync` event (what it missed is gone; it should re-read what it shows).
//! The stream ends when the server shuts down (the bus is closed), and the client reconnects
//! to the next one.
//!
//! No token: like the console's pages, the stream is read-only and says no more than they
//! show (which job took which step or moved to which stage, which task ended), and a
//! browser's `EventSource` cannot send an `Authorization` header. See the console's module
//! docs for the whole token rule.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use super::ReadState;

/// How long a client waits before reconnecting.
pub const RETRY: Duration = Duration::from_secs(1);

/// `GET /v1/events`.
pub async fn events<S: ReadState>(State(st): State<S>) -> Response {
    let rx = st.events().subscribe();
    let closed = Box::pin(st.events().closed());
    let hello = SseEvent::default()
        .retry(RETRY)
        .event("hello")
        .data(format!("{{\"runtime\":\"{}\"}}", st.runtime().as_str()));
    let first = futures::stream::once(async move { Ok::<_, Infallible>(hello) });
    // Ends at shutdown (the bus closed), so the server's graceful shutdown completes.
    let rest = futures::stream::unfold((rx, closed), |(mut rx, mut closed)| async move {
        let received = tokio::select! {
            r = rx.recv() => r,
            () = &mut closed => return None,
        };
        let event = match received {
            Ok(e) => SseEvent::default()
                .event(e.name())
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Err(RecvError::Lagged(n)) => SseEvent::default()
                .event("resync")
                .data(format!("{{\"missed\":{n}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(event), (rx, closed)))
    });
    let mut response = Sse::new(futures::StreamExt::chain(first, rest))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Never buffered by a proxy (nginx), never cached.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

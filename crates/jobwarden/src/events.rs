//! The live event bus: what `GET /v1/events` streams (Server-Sent Events) to the web console
//! and any other client.
//!
//! Three kinds of event, each published from the one place that makes it happen, for both
//! runtimes:
//! - `step`: an escalation step was carried out (`warn`, `soft_kill`, `hard_kill`,
//!   `force_delete`), and
//! - `stage`: a job moved to a stage (`running`, `terminating`, `completed`, `failed`,
//!   `cleanup`, …): both from [`crate::hooks::HookRunner::fire`], which every step and stage
//!   change of both runtimes goes through (whether or not a hook listens);
//! - `task`: a cleanup task finished (`done`) or was dead-lettered (`dead`), from the queue
//!   worker ([`crate::cleanup::worker`]).
//!
//! The bus is a [`tokio::sync::broadcast`] channel: publishing never blocks and costs nothing
//! without subscribers; a subscriber that falls more than [`CAPACITY`] events behind is told
//! so (the stream sends a `resync` event) rather than slowing the daemon down. An event says
//! what happened to which job, never more than the console's read-only pages show.

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{Stage, Step, Timestamp};

/// How many events a slow subscriber may fall behind before it is told to resync.
pub const CAPACITY: usize = 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An escalation step was carried out.
    Step {
        /// The job.
        job_id: String,
        /// Which step.
        step: Step,
        /// Why (the step's audit reason).
        reason: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// A job moved to a stage.
    Stage {
        /// The job.
        job_id: String,
        /// The stage it is in now.
        stage: Stage,
        /// Why, when there is a reason (timeout, cancelled, how it ended).
        reason: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// A cleanup task finished or was dead-lettered.
    Task {
        /// The task's id.
        task_id: i64,
        /// Its kind (`workspace`, `log`, `artifact_prefix`, `orphan_workspace`, …).
        kind: String,
        /// The job it concerns, if any.
        job_id: Option<String>,
        /// `done` or `dead`.
        result: &'static str,
        /// When.
        at: Timestamp,
    },
}

impl Event {
    /// The SSE event name: `step`, `stage` or `task`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Step { .. } => "step",
            Event::Stage { .. } => "stage",
            Event::Task { .. } => "task",
        }
    }

    /// The event for a hook event name (a step or a stage), if it is one.
    pub fn for_hook(
        event: &str,
        job_id: &str,
        reason: Option<String>,
        at: Timestamp,
    ) -> Option<Event> {
        if let Ok(step) = event.parse::<Step>() {
            return Some(Event::Step {
                job_id: job_id.to_owned(),
                step,
                reason,
                at,
            });
        }
        event.parse::<Stage>().ok().map(|stage| Event::Stage {
            job_id: job_id.to_owned(),
            stage,
            reason,
            at,
        })
    }
}

/// The bus: cheap to clone, shared by whatever publishes and the HTTP server.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    /// Set at shutdown: every stream ends, so the server's graceful shutdown does not wait
    /// for a browser that keeps its event stream open.
    closed: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        EventBus {
            tx: broadcast::Sender::new(CAPACITY),
            closed: std::sync::Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Ends every subscriber's stream (at shutdown); later subscribers end at once.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Completes once the bus is closed.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Publishes `event` to every subscriber (none: dropped).
    pub fn publish(&self, event: Event) {
        // An error only says there is no subscriber.
        let _ = self.tx.send(event);
    }

    /// A new subscription: every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// How many subscribers there are now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_events_are_steps_or_stages_and_nothing_else() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        assert!(matches!(
            Event::for_hook("soft_kill", "j", Some("timeout".into()), at),
            Some(Event::Step {
                step: Step::SoftKill,
                ..
            })
        ));
        assert!(matches!(
            Event::for_hook("terminating", "j", None, at),
            Some(Event::Stage {
                stage: Stage::Terminating,
                ..
            })
        ));
        assert_eq!(Event::for_hook("pre_start_hook", "j", None, at), None);
        let json = serde_json::to_value(Event::for_hook("warn", "j1", None, at)).expect("json");
        assert_eq!(json["type"], "step");
        assert_eq!(json["step"], "warn");
        assert_eq!(json["job_id"], "j1");
    }

    #[tokio::test]
    async fn subscribers_get_what_is_published_after_they_subscribed() {
        let bus = EventBus::new();
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("ts");
        bus.publish(Event::for_hook("warn", "before", None, at).expect("event"));
        let mut rx = bus.subscribe();
        assert_eq!(bus.subscribers(), 1);
        bus.publish(Event::for_hook("running", "after", None, at).expect("event"));
        let got = rx.recv().await.expect("event");
        assert!(matches!(got, Event::Stage { ref job_id, .. } if job_id == "after"));
        assert_eq!(got.name(), "stage");
        let closed = bus.closed();
        bus.close();
        tokio::time::timeout(std::time::Duration::from_secs(1), closed)
            .await
            .expect("closed");
        tokio::time::timeout(std::time::Duration::from_secs(1), bus.closed())
            .await
            .expect("a later wait ends at once");
    }
}

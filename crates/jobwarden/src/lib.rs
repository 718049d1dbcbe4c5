//! jobwarden: job timeouts, escalation and cleanup.
